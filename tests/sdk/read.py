"""Read-side and lifecycle flow with the real ClearML SDK: run in another
process than `track.py`, on the task it produced.

Reads the task back (by id and by project/name): parameters (argparse and
dict), the connected configuration, reported scalars, last scalar metrics,
single values, plots, debug samples (and the image file they point at),
console output, the artifact and the output model's weights. Then lists
tasks with tag, excluded-tag, status and type filters, and drives two more
tasks through `mark_started`, `mark_stopped`, `publish`, `mark_failed` and
`reset`, reading each status back from a fresh `Task.get_task`.

Prints one JSON line (`RESULT {...}`) with what it saw; the Rust test
checks it.

Arguments: <project> <name> <task id>
"""
import json
import sys

from PIL import Image
from clearml import StorageManager, Task

project, name, task_id = sys.argv[1:4]
out = {}


def status(tid):
    return Task.get_task(task_id=tid).get_status()


by_id = Task.get_task(task_id=task_id)
by_name = Task.get_task(project_name=project, task_name=name)
out["id"] = by_id.id
out["by_name_id"] = by_name.id
out["status"] = by_id.get_status()
out["project"] = by_id.get_project_name()
out["output_uri"] = by_id.output_uri
out["tags"] = sorted(by_id.get_tags())
out["params"] = {k: v for k, v in by_id.get_parameters().items()
                 if k.startswith(("Args/", "General/"))}
out["config"] = by_id.get_configuration_object_as_dict("model_config")
out["config_names"] = sorted(by_id.get_configuration_objects() or {})
out["scalars"] = by_id.get_reported_scalars()
out["last_scalars"] = by_id.get_last_scalar_metrics()
out["single_values"] = by_id.get_reported_single_values()

plots = by_id.get_reported_plots()
out["plots"] = [
    {"metric": p.get("metric"), "variant": p.get("variant"), "iter": p.get("iter"),
     "data": [{"y": d.get("y"), "type": d.get("type")}
              for d in json.loads(p["plot_str"]).get("data", [])]}
    for p in plots
]

samples = by_id.get_debug_samples("img", "sample")
out["debug_samples"] = [
    {"metric": s.get("metric"), "variant": s.get("variant"), "iter": s.get("iter"),
     "url": s.get("url")}
    for s in samples
]
if samples:
    local = StorageManager.get_local_copy(samples[0]["url"], force_download=True)
    with Image.open(local) as img:
        out["image"] = {"size": list(img.size), "pixel": list(img.convert("RGB").getpixel((0, 0)))}

console = "\n".join(by_id.get_reported_console_output(number_of_reports=100))
out["console_has_print"] = "CONSOLE-LINE batch_size=64 optimizer=adamw" in console
out["console_has_text"] = "TEXT-FROM-REPORT-TEXT" in console

out["artifact"] = by_id.artifacts["stats"].get()
models = by_id.models["output"]
out["models"] = [m.name for m in models]
out["model_url"] = models[0].url if models else None
if models:
    with open(models[0].get_local_copy(raise_on_error=True), "rb") as f:
        out["model_bytes_ok"] = f.read() == b"\x00weights" * 100

# Two more tasks of other types, for the list filters and the lifecycle.
stopped = Task.create(project_name=project, task_name="lifecycle-stop", task_type="testing")
failed = Task.create(project_name=project, task_name="lifecycle-fail",
                     task_type="data_processing")
failed.add_tags(["scratch"])
life = {"created": status(stopped.id)}

stopped.mark_started()
life["started"] = status(stopped.id)
stopped.mark_stopped()
life["stopped"] = status(stopped.id)
stopped.reload()
stopped.publish()
life["published"] = status(stopped.id)
try:
    stopped.reset()
    life["reset_published"] = "accepted"
except Exception as e:  # the server refuses: a published task is locked
    life["reset_published"] = type(e).__name__
life["after_refused_reset"] = status(stopped.id)

failed.mark_started(force=True)
failed.get_logger().report_scalar("loss", "train", value=7.0, iteration=5)
failed.flush(wait_for_uploads=True)
life["failed_scalars_before_reset"] = Task.get_task(task_id=failed.id).get_last_scalar_metrics()
failed.mark_failed(status_reason="test", status_message="failed on purpose")
life["failed"] = status(failed.id)
failed.reset()
life["reset"] = status(failed.id)
life["failed_scalars_after_reset"] = Task.get_task(task_id=failed.id).get_last_scalar_metrics()
out["lifecycle"] = life


def names(**kwargs):
    return sorted(t.name for t in Task.get_tasks(project_name=project, **kwargs))


out["get_tasks"] = {
    "all": names(),
    "tag_sdk": names(tags=["sdk"]),
    "tag_not_sdk": names(tags=["-sdk"]),
    "tag_not_scratch": names(tags=["-scratch"]),
    "status_completed": names(task_filter={"status": ["completed"]}),
    "status_published_or_created": names(task_filter={"status": ["published", "created"]}),
    "type_testing": names(task_filter={"type": ["testing"]}),
    "type_training": names(task_filter={"type": ["training"]}),
    "name_regex": names(task_name="^lifecycle-"),
}
print("RESULT " + json.dumps(out, sort_keys=True, default=str))
