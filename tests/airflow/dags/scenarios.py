"""One DAG per end-to-end scenario (tests/integration/airflow.rs), each scheduled on its
own asset, so that scenarios running at once never see each other's events or runs.

Their one task is an EmptyOperator, which the scheduler marks done without starting a
process: the scenarios look at the runs Airflow makes and the events each consumes,
and a task process per run would only load the machine (the DAG in highwater_e2e.py
runs a real task that reads the events, as the example DAG of docs/reference/airflow.md does).
"""

import pendulum

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import Asset, dag

SCENARIOS = ["burst", "rotate", "stall", "partial", "restart", "outage"]


def make(scenario):
    asset = Asset(name=f"highwater-e2e-{scenario}", uri=f"s3://highwater-e2e/{scenario}")

    @dag(
        dag_id=f"highwater_e2e_{scenario}",
        schedule=[asset],
        start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
        catchup=False,
        # Events posted while a DAG is paused start no run.
        is_paused_upon_creation=False,
        tags=["highwater-e2e"],
    )
    def scenario_dag():
        EmptyOperator(task_id="consume")

    return scenario_dag()


for name in SCENARIOS:
    make(name)
