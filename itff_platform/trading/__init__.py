"""Paper trading on the consensus (runbook 004): risk gates, sizing, a broker seam and a Delta ledger.

Plain domain code, below the service: `desk.OrderDesk` is what POST /trade/execute, GET /portfolio and
POST /risk/reset call. It reads the lake (fill prices, marks, realized volatility) and writes only its ledger."""
