"""A training loop that survives preemption.

It checkpoints after every epoch into $WEIR_CHECKPOINT_DIR (atomically: write,
then rename) and, on start, resumes after the last checkpointed epoch. On
SIGTERM (a preemption) it finishes the current epoch's checkpoint and exits;
Weir saves the checkpoint directory and the next attempt resumes from it.
"""
import json
import os
import signal
import sys
import time

EPOCHS = int(os.environ.get("EPOCHS", "10"))
EPOCH_SECONDS = float(os.environ.get("EPOCH_SECONDS", "0.5"))
checkpoint = os.path.join(os.environ["WEIR_CHECKPOINT_DIR"], "state.json")

state = {"epoch": 0, "weight": 0.0}
if os.path.exists(checkpoint):
    with open(checkpoint) as f:
        state = json.load(f)
    print(f"resuming after epoch {state['epoch']}", flush=True)

preempted = False


def on_sigterm(_signum, _frame):
    global preempted
    preempted = True


signal.signal(signal.SIGTERM, on_sigterm)
if os.environ.get("PID_FILE"):
    # The step runtime leads this process group; tests preempt it by this id.
    with open(os.environ["PID_FILE"], "w") as f:
        f.write(str(os.getpgrp()))


def save():
    tmp = checkpoint + ".tmp"
    with open(tmp, "w") as f:
        json.dump(state, f)
    os.replace(tmp, checkpoint)


progress = open(os.environ.get("PROGRESS_FILE", os.devnull), "a")
metrics = open(os.environ["WEIR_METRICS_FILE"], "a")
while state["epoch"] < EPOCHS:
    if preempted:
        print(f"preempted after epoch {state['epoch']}; checkpoint saved", flush=True)
        sys.exit(143)
    time.sleep(EPOCH_SECONDS)  # one epoch of training
    state["epoch"] += 1
    state["weight"] += 0.1
    save()
    progress.write(f"{state['epoch']}\n")
    progress.flush()
    loss = 1.0 / state["epoch"]
    metrics.write(json.dumps({"key": "loss", "value": loss, "step": state["epoch"]}) + "\n")
    metrics.flush()
    print(f"epoch {state['epoch']}: loss {loss:.4f}", flush=True)

with open(os.path.join(os.environ["WEIR_OUTPUTS_DIR"], "model"), "w") as f:
    json.dump({"weight": state["weight"], "epochs": state["epoch"]}, f)
