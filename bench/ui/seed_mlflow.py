"""Copies a seeded Weir tracking store into MLflow's SQL schema, for the
dashboard comparison (bench/ui_scale.sh): the same experiment, runs,
params, tags and latest metrics; the full metric history (each point) for
the newest HISTORY_RUNS runs, which the timed pages read (MLflow's
history lookups go through an index on the run, so the history of runs no
page opens changes no timing; copying 200M points would take an hour).

  python bench/ui/seed_mlflow.py MLFLOW.db sqlite:///WEIR.db HISTORY_RUNS
The MLflow database must exist with its schema (`mlflow db upgrade`).
"""
import math
import sqlite3
import sys
import time
import uuid

mlflow_db, weir_url, history_runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
weir = sqlite3.connect(weir_url.removeprefix("sqlite://"))
m = sqlite3.connect(mlflow_db)
m.execute("PRAGMA journal_mode = WAL")
m.execute("PRAGMA synchronous = OFF")
t0 = time.time()
(exp_id,) = weir.execute("SELECT experiment_id FROM experiments WHERE name = 'scale'").fetchone()
cur = m.execute(
    "INSERT INTO experiments (name, artifact_location, lifecycle_stage, creation_time, last_update_time) "
    "VALUES ('scale', 'mlflow-artifacts:/scale', 'active', 0, 0)")
mexp = cur.lastrowid
runs = weir.execute(
    "SELECT run_id, name, user_id, status, start_time, end_time FROM tracking_runs WHERE experiment_id = ? "
    "ORDER BY start_time DESC", (exp_id,)).fetchall()
m.executemany(
    "INSERT INTO runs (run_uuid, name, source_type, source_name, entry_point_name, user_id, status, start_time, "
    "end_time, source_version, lifecycle_stage, artifact_uri, experiment_id) "
    "VALUES (?, ?, 'LOCAL', '', '', ?, ?, ?, ?, '', 'active', ?, ?)",
    [(r[0], r[1], r[2], r[3], r[4], r[5], f"mlflow-artifacts:/{mexp}/{r[0]}/artifacts", mexp) for r in runs])
m.executemany("INSERT INTO params (key, value, run_uuid) VALUES (?, ?, ?)",
              weir.execute("SELECT key, value, run_id FROM run_params"))
m.executemany("INSERT INTO tags (key, value, run_uuid) VALUES (?, ?, ?)",
              weir.execute("SELECT key, value, run_id FROM run_tags"))
m.executemany("INSERT INTO latest_metrics (key, value, timestamp, step, is_nan, run_uuid) VALUES (?, ?, ?, ?, ?, ?)",
              weir.execute("SELECT key, value, ts, step, is_nan, run_id FROM latest_metrics"))
m.commit()
print(f"runs, params, tags, latest metrics: {time.time() - t0:.0f} s", file=sys.stderr)
# The history's values are not copied (Weir packs points in chunks); the
# points are made with the same keys, steps and timestamps: a lookup's time
# depends on the layout, not on the values.
keys = [k for (k,) in weir.execute("SELECT DISTINCT key FROM latest_metrics")]
(steps,) = weir.execute("SELECT MAX(step) + 1 FROM latest_metrics").fetchone()
rows = []
for run_id, _, _, _, start, _ in runs[:history_runs]:
    for k in keys:
        for s in range(steps):
            rows.append((k, math.sin(s / 10.0), start + s * 1000, run_id, s, 0))
    if len(rows) > 200_000:
        m.executemany("INSERT INTO metrics (key, value, timestamp, run_uuid, step, is_nan) VALUES (?, ?, ?, ?, ?, ?)", rows)
        rows.clear()
if rows:
    m.executemany("INSERT INTO metrics (key, value, timestamp, run_uuid, step, is_nan) VALUES (?, ?, ?, ?, ?, ?)", rows)
m.commit()
print(f"done in {time.time() - t0:.0f} s", file=sys.stderr)
