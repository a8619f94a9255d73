"""OpenLineage: a pipeline run and each of its steps emit START then COMPLETE
(or FAIL, with the error) over HTTP, received by a stand-in consumer at
/api/v1/lineage. Every event is rebuilt, field by field and with no field
left over, from the classes the official openlineage-python package
generates from the OpenLineage JSON schema, whose validators check the
formats (run ids are UUIDs, times are date-times, URIs); each facet's
_schemaURL must be the one the package names for that facet. A consumer
that is down costs the run nothing but the events, which are counted."""
import json
import os
import socket
import subprocess
import tempfile
import threading
import time
import types
import typing
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import attr
import pytest
from openlineage.client import event_v2
from openlineage.client.generated import (data_quality_metrics_input_dataset, dataset_version_dataset,
                                          datasource_dataset, error_message_run, job_type_job,
                                          output_statistics_output_dataset, parent_run,
                                          processing_engine_run, schema_dataset,
                                          source_code_location_job)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WEIR = os.environ.get("WEIR_BIN", os.path.join(ROOT, "target", "debug", "weir"))

# The facets Weir sends, by the key OpenLineage names them with.
FACETS = {
    "parent": parent_run.ParentRunFacet,
    "errorMessage": error_message_run.ErrorMessageRunFacet,
    "processing_engine": processing_engine_run.ProcessingEngineRunFacet,
    "jobType": job_type_job.JobTypeJobFacet,
    "sourceCodeLocation": source_code_location_job.SourceCodeLocationJobFacet,
    "schema": schema_dataset.SchemaDatasetFacet,
    "dataSource": datasource_dataset.DatasourceDatasetFacet,
    "version": dataset_version_dataset.DatasetVersionDatasetFacet,
    "dataQualityMetrics": data_quality_metrics_input_dataset.DataQualityMetricsInputDatasetFacet,
    "outputStatistics": output_statistics_output_dataset.OutputStatisticsOutputDatasetFacet,
}


def build(tp, data, where):
    """`data` as an instance of type `tp` from the generated model; any key
    the model lacks, or a value of the wrong shape, fails."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if data is None:
            return None
        assert len(args) == 1, f"{where}: ambiguous {tp}"
        return build(args[0], data, where)
    if origin is list:
        assert isinstance(data, list), f"{where}: not a list"
        return [build(typing.get_args(tp)[0], x, f"{where}[{i}]") for i, x in enumerate(data)]
    if origin is dict:
        assert isinstance(data, dict), f"{where}: not an object"
        value = typing.get_args(tp)[1]
        out = {}
        for k, v in data.items():
            facet = FACETS.get(k) if getattr(value, "__name__", "").endswith("Facet") else None
            assert facet is not None or not getattr(value, "__name__", "").endswith("Facet"), \
                f"{where}: facet '{k}' is not one Weir should send"
            out[k] = build(facet or value, v, f"{where}.{k}")
        return out
    if attr.has(tp):
        assert isinstance(data, dict), f"{where}: not an object"
        hints = typing.get_type_hints(tp)
        fields = {f.name: f for f in attr.fields(tp) if f.init}
        by_key = {(f.alias or f.name): f for f in fields.values()}
        # attrs takes `_producer` as `producer`.
        kwargs = {}
        for key, value in data.items():
            if key == "_schemaURL":
                # Not an argument: the model sets it to the schema it was made from.
                assert value == tp._get_schema(), f"{where}: {value} is not {tp._get_schema()}"
                continue
            name = key[1:] if key.startswith("_") else key
            assert name in by_key or key in fields, f"{where}: '{key}' is not in {tp.__name__}"
            f = by_key.get(name) or fields[key]
            kwargs[f.alias or f.name] = build(hints[f.name], value, f"{where}.{key}")
        if tp in FACETS.values():
            assert "_schemaURL" in data and "_producer" in data, f"{where}: facet without its schema"
        return tp(**kwargs)
    if tp is float:
        assert isinstance(data, (int, float)), f"{where}: not a number"
        return float(data)
    if isinstance(tp, type) and issubclass(tp, __import__("enum").Enum):
        return tp(data)
    if tp in (str, int, bool):
        assert isinstance(data, tp), f"{where}: not {tp.__name__}: {data!r}"
        return data
    return data


def validate(event):
    assert event["schemaURL"] == event_v2.RunEvent._get_schema()
    body = dict(event)
    body.pop("schemaURL")
    return build(event_v2.RunEvent, body, "event")


class Consumer:
    """POST /api/v1/lineage, JSON bodies, as Marquez takes them."""

    def __init__(self):
        self.events = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                assert self.path == "/api/v1/lineage", self.path
                outer.events.append(json.loads(body))
                self.send_response(201)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


PIPELINE = """version: 1
name: ol
steps:
  ingest:
    uses: weir/ingest
    with: { path: data.csv }
  train:
    uses: weir/train-linear
    inputs: { train: ingest.table }
    with: { target: y, features: [x] }
  broken:
    run: exit 3
    inputs: { model: train.model }
"""


def work():
    d = tempfile.mkdtemp(prefix="weir-ol-")
    with open(os.path.join(d, "data.csv"), "w") as f:
        f.write("x,y\n" + "".join(f"{i % 50},{int(i % 50 > 25)}\n" for i in range(300)))
    with open(os.path.join(d, "p.yaml"), "w") as f:
        f.write(PIPELINE)
    return d


def run(d, url):
    env = dict(os.environ, WEIR_HOME=os.path.join(d, ".weir"), WEIR_OPENLINEAGE_URL=url)
    for var in ("WEIR_DB", "WEIR_ARTIFACTS"):
        env.pop(var, None)
    return subprocess.run([WEIR, "run", "p.yaml"], cwd=d, env=env, capture_output=True, text=True,
                          timeout=120)


def test_runs_and_steps_emit_valid_events_with_datasets_and_facets():
    consumer = Consumer()
    try:
        out = run(work(), consumer.url)
        assert out.returncode != 0 and "broken" in out.stderr
        deadline = time.time() + 10
        while time.time() < deadline and not any(
                e["eventType"] == "FAIL" and e["job"]["name"] == "ol" for e in consumer.events):
            time.sleep(0.05)
        events = consumer.events
    finally:
        consumer.close()
    for e in events:
        validate(e)
    kinds = [(e["job"]["name"], e["eventType"]) for e in events]
    assert kinds[0] == ("ol", "START") and kinds[-1] == ("ol", "FAIL"), kinds
    for step, end in (("ol.ingest", "COMPLETE"), ("ol.train", "COMPLETE"), ("ol.broken", "FAIL")):
        assert [k for j, k in kinds if j == step] == ["START", end], kinds
    run_id = events[0]["run"]["runId"]
    steps = [e for e in events if e["job"]["name"] != "ol"]
    assert all(e["run"]["facets"]["parent"]["run"]["runId"] == run_id for e in steps)
    assert len({e["run"]["runId"] for e in steps}) == 3
    by = {(e["job"]["name"], e["eventType"]): e for e in events}
    # ingest wrote a dataset version: named, versioned by digest, with its schema and row count.
    [table] = by[("ol.ingest", "COMPLETE")]["outputs"]
    assert table["name"] == "ol.ingest" and table["namespace"].startswith("file://")
    assert [f["name"] for f in table["facets"]["schema"]["fields"]] == ["x", "y"]
    assert len(table["facets"]["version"]["datasetVersion"]) == 64
    assert table["outputFacets"]["outputStatistics"]["rowCount"] == 300
    # train read it, with its quality metrics; and wrote its model.
    [read] = by[("ol.train", "START")]["inputs"]
    assert read["name"] == "ol.ingest"
    metrics = read["inputFacets"]["dataQualityMetrics"]
    assert metrics["rowCount"] == 300 and metrics["columnMetrics"]["x"]["nullCount"] == 0
    assert metrics["columnMetrics"]["x"]["max"] == 49
    [model] = by[("ol.train", "COMPLETE")]["outputs"]
    assert model["name"] == "ol.train.model"
    failed = by[("ol.broken", "FAIL")]["run"]["facets"]["errorMessage"]
    assert "exit" in failed["message"].lower() and failed["programmingLanguage"] == "RUST"
    assert "broken" in by[("ol", "FAIL")]["run"]["facets"]["errorMessage"]["message"]
    assert by[("ol", "START")]["job"]["facets"]["jobType"]["jobType"] == "PIPELINE"


def test_a_consumer_that_is_down_fails_nothing_and_the_lost_events_are_counted():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    d = work()
    with open(os.path.join(d, "p.yaml"), "w") as f:
        f.write(PIPELINE.split("  broken:")[0])
    started = time.time()
    out = run(d, f"http://127.0.0.1:{port}")
    assert out.returncode == 0, out.stderr
    assert "OpenLineage event(s) could not be delivered" in out.stderr, out.stderr
    assert time.time() - started < 30


def test_events_to_a_file_and_a_url_that_is_neither_is_refused():
    d = work()
    path = os.path.join(d, "events.ndjson")
    out = run(d, f"file://{path}")
    assert out.returncode != 0
    with open(path) as f:
        events = [json.loads(line) for line in f]
    for e in events:
        validate(e)
    assert len(events) == 8, [(e["job"]["name"], e["eventType"]) for e in events]
    bad = run(work(), "marquez:5000")
    assert bad.returncode != 0 and "neither an http(s) URL" in bad.stderr, bad.stderr
    assert not os.path.exists(os.path.join(d, "never"))
