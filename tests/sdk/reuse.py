"""Task reuse across runs: run twice with the same project and name (and the
same home directory, where the SDK caches the last task id). The second run's
`Task.init` resets the first run's (completed, artifact-free) task and keeps
its id. Prints `RESULT {...}` with what each run saw at its start and end.

Arguments: <project> <name> <loss value to report>
"""
import json
import sys

from clearml import Task

project, name, value = sys.argv[1], sys.argv[2], float(sys.argv[3])
task = Task.init(project_name=project, task_name=name,
                 auto_connect_frameworks=False, auto_resource_monitoring=False)
task.connect({"lr": 0.1}, name="General")
fresh = Task.get_task(task_id=task.id)
out = {
    "id": task.id,
    "status_at_start": fresh.get_status(),
    "scalars_at_start": fresh.get_last_scalar_metrics(),
}
task.get_logger().report_scalar("loss", "train", value=value, iteration=1)
task.close()
done = Task.get_task(task_id=out["id"])
out["status_at_end"] = done.get_status()
out["scalars_at_end"] = done.get_last_scalar_metrics()
print("RESULT " + json.dumps(out, sort_keys=True))
