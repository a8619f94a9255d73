"""LightGBM on the rows, split and features weir_gbdt trains on, encoded the
way Weir encodes them: numbers as they are, text columns as codes ranked by
training frequency (unseen and missing: NaN), all given to LightGBM as
numeric features. Hyper-parameters mirror the weir_gbdt step."""
import json
import os
import time

import lightgbm as lgb
import numpy as np
import pyarrow.parquet as pq
from sklearn.metrics import roc_auc_score

inputs = os.environ["WEIR_INPUTS_DIR"]
params = json.load(open(os.environ["WEIR_PARAMS"]))
with_ = params.get("with", params)
threads = int(with_["threads"])
rounds = int(with_["rounds"])

FEATURES = ["carrier", "origin", "dest", "hour", "month", "day", "distance", "sched_dep_time",
            "sched_arr_time", "temp", "dewp", "humid", "wind_speed", "wind_gust", "precip",
            "pressure", "visib"]
TEXT = {"carrier", "origin", "dest"}

def load(name):
    t = pq.read_table(os.path.join(inputs, name)).to_pandas()
    t = t[t["arr_delay"].notna()]
    return t, (t["arr_delay"] > 15).astype(np.float64).to_numpy()

train, y_train = load("train")
valid, y_valid = load("valid")
test, y_test = load("test")

codes = {}
for c in TEXT:
    counts = train[c].value_counts()
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    codes[c] = {k: float(i) for i, (k, _) in enumerate(ranked[:254])}

def matrix(t):
    cols = []
    for c in FEATURES:
        if c in TEXT:
            cols.append(t[c].map(codes[c]).astype(np.float64).to_numpy())
        else:
            cols.append(t[c].astype(np.float64).to_numpy())
    return np.column_stack(cols)

x_train, x_valid, x_test = matrix(train), matrix(valid), matrix(test)
booster_params = {
    "objective": "binary", "learning_rate": 0.1, "num_leaves": 31, "min_data_in_leaf": 20,
    "lambda_l2": 0.0, "max_bin": 255, "num_threads": threads, "verbose": -1,
    "metric": "binary_logloss", "seed": 0, "deterministic": True,
}
start = time.perf_counter()
dtrain = lgb.Dataset(x_train, y_train, free_raw_data=False)
dvalid = lgb.Dataset(x_valid, y_valid, reference=dtrain)
booster = lgb.train(booster_params, dtrain, num_boost_round=rounds, valid_sets=[dvalid],
                    callbacks=[lgb.early_stopping(20, verbose=False)])
fit_seconds = time.perf_counter() - start
test_auc = roc_auc_score(y_test, booster.predict(x_test, num_iteration=booster.best_iteration))
valid_auc = roc_auc_score(y_valid, booster.predict(x_valid, num_iteration=booster.best_iteration))
with open(os.environ["WEIR_METRICS_FILE"], "a") as f:
    for key, value in [("lightgbm.fit_seconds", fit_seconds), ("lightgbm.test_auc", test_auc),
                       ("lightgbm.valid_auc", valid_auc),
                       ("lightgbm.best_iteration", booster.best_iteration),
                       ("lightgbm.rows", len(y_train))]:
        f.write(json.dumps({"key": key, "value": float(value)}) + "\n")
print(f"lightgbm {lgb.__version__}: fit {fit_seconds:.2f}s, best iteration {booster.best_iteration}, "
      f"test AUC {test_auc:.4f}")
