"""The DAG the end-to-end test triggers through highwater's airflow sink.

Scheduled on an asset declared by name *and* URI: a positional Asset("s3://...") would
be a name, and the sink resolves assets by URI.
"""

import pendulum

from airflow.sdk import Asset, dag, task

LANDING = Asset(name="highwater-e2e-landing", uri="s3://highwater-e2e/landing")


@dag(
    schedule=[LANDING],
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    # Events posted while a DAG is paused start no run.
    is_paused_upon_creation=False,
    tags=["highwater-e2e"],
)
def highwater_e2e():
    @task
    def consume(**context):
        # Airflow may fold several events into one run: read them all, and drop
        # repeats by highwater's event id.
        seen = set()
        for event in context["triggering_asset_events"][LANDING]:
            event_id = event.extra.get("event_id")
            if event_id in seen:
                continue
            seen.add(event_id)
            print("highwater event", event_id, event.extra.get("item"))

    consume()


highwater_e2e()
