"""Promotion's per-model lock under the cluster profile: a Postgres advisory lock on the real server, so
researchers on different machines (sharing only the servers) promote one model one at a time."""

import threading
import time

from itff_platform.settings import Settings
from itff_platform.training.model_lock import model_lock


def test_the_same_model_waits_for_the_holder_and_another_model_does_not(servers):
    settings = Settings(profile="cluster", postgres_url=servers["postgres"])
    held, events = threading.Event(), []

    def holder() -> None:
        with model_lock(settings, "itff-BTCUSDT-direction"):
            held.set()
            time.sleep(0.5)
            events.append("holder released")

    thread = threading.Thread(target=holder)
    thread.start()
    held.wait(10)
    with model_lock(settings, "itff-ETHUSDT-direction"):  # another model: no wait
        events.append("other model")
    with model_lock(settings, "itff-BTCUSDT-direction"):
        events.append("same model")
    thread.join()
    assert events == ["other model", "holder released", "same model"]
