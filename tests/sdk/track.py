"""Tracking flow with the real ClearML SDK against tasklab: the producer.

Task.init of a new task in a nested project, with command-line arguments
parsed by argparse (connected by the SDK as section `Args`), a connected
dict, a connected configuration, scalars over several iterations, a single
value, a histogram, an image, text, console output, an artifact and an output
model; then close. Everything is read back by `read.py` in another process.

Prints one JSON line (`RESULT {...}`) with the task id.

Arguments: <project> <name> [--batch-size N] [--optimizer NAME]
"""
import argparse
import json
import os
import tempfile

import numpy as np
from clearml import OutputModel, Task

parser = argparse.ArgumentParser()
parser.add_argument("project")
parser.add_argument("name")
parser.add_argument("--batch-size", type=int, default=32)
parser.add_argument("--optimizer", default="sgd")

args = parser.parse_args()
task = Task.init(project_name=args.project, task_name=args.name,
                 tags=["sdk", "keep"], output_uri=True, reuse_last_task_id=False,
                 auto_connect_frameworks=False, auto_resource_monitoring=False)
params = task.connect({"lr": 0.1, "epochs": 3, "name": "adam"})
config = task.connect_configuration(
    {"layers": [64, 32], "dropout": 0.25, "head": {"kind": "softmax"}}, name="model_config")

logger = task.get_logger()
for i in range(3):
    logger.report_scalar("loss", "train", value=1.0 / (i + 1), iteration=i)
    logger.report_scalar("loss", "val", value=2.0 / (i + 1), iteration=i)
logger.report_single_value("acc", 0.9)
logger.report_histogram("hist", "counts", values=[3, 1, 4], iteration=0,
                        xaxis="bucket", yaxis="count")
image = np.zeros((8, 12, 3), dtype=np.uint8)
image[:, :, 0] = 255
logger.report_image("img", "sample", iteration=0, image=image)
logger.report_text("TEXT-FROM-REPORT-TEXT")
print("CONSOLE-LINE batch_size=%d optimizer=%s" % (args.batch_size, args.optimizer))

task.upload_artifact("stats", {"a": 1, "b": [1, 2]}, wait_on_upload=True)
weights = os.path.join(tempfile.mkdtemp(), "model.bin")
with open(weights, "wb") as f:
    f.write(b"\x00weights" * 100)
model = OutputModel(task=task, name="m1", framework="PyTorch")
model.update_weights(weights_filename=weights, iteration=3)

task_id = task.id
task.close()
print("RESULT " + json.dumps({"id": task_id}))
