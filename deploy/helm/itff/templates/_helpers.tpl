{{/* The platform's environment: the values' env, then the Secret (ITFF_POSTGRES_URL and the tokens). */}}
{{- define "itff.env" -}}
{{- range $name, $value := .Values.env }}
- name: {{ $name }}
  value: {{ $value | quote }}
{{- end }}
{{- end -}}

{{- define "itff.envFrom" -}}
- secretRef:
    name: {{ .Values.secretName }}
{{- end -}}

{{- define "itff.dataMounts" -}}
- name: lake
  mountPath: /data/lake
- name: reports
  mountPath: /data/reports
{{- end -}}

{{- define "itff.dataVolumes" -}}
- name: lake
  persistentVolumeClaim:
    claimName: {{ .Values.volumes.lakeClaim }}
- name: reports
  persistentVolumeClaim:
    claimName: {{ .Values.volumes.reportsClaim }}
{{- end -}}
