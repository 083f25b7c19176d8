"""The DAG the end-to-end test removes (it deletes this file from the copy of the DAG
folder Airflow reads) to check that a watcher holds its events once no DAG consumes its
asset, and puts back to see them delivered.
"""

import pendulum

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import Asset, dag

REMOVABLE = Asset(name="highwater-e2e-removable", uri="s3://highwater-e2e/removable")


@dag(
    schedule=[REMOVABLE],
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    is_paused_upon_creation=False,
    tags=["highwater-e2e"],
)
def highwater_e2e_removable():
    # Marked done by the scheduler without a task process (see scenarios.py).
    EmptyOperator(task_id="consume")


highwater_e2e_removable()
