"""The service's workers start together (ITFF_SERVE_WORKERS=2, the default): on a tracking store that does not
exist yet (make serve before make run) or was written by an older MLflow, both ran MLflow's schema migration at
once, and one of them died at start ("duplicate column name: step", "table _alembic_tmp_experiments already
exists"): a service with one worker left, then none after the supervisor gave up."""

import multiprocessing

from itff_platform.contracts.champions import ChampionStore
from itff_platform.settings import Settings


def open_store(home: str, barrier, answers) -> None:
    store = ChampionStore(Settings(home=home, symbols=["BTCUSDT"]))
    barrier.wait()  # both workers reach the store at the same moment, as bentoml serve starts them
    try:
        store.refresh()
        answers.put("ok")
    except Exception as error:
        answers.put(f"{type(error).__name__}: {str(error)[:200]}")


def test_two_workers_opening_a_new_tracking_store_at_once_both_start(tmp_path):
    spawn = multiprocessing.get_context("spawn")
    barrier, answers = spawn.Barrier(2), spawn.Queue()
    workers = [spawn.Process(target=open_store, args=(str(tmp_path), barrier, answers)) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert [answers.get(timeout=5) for _ in workers] == ["ok", "ok"]
