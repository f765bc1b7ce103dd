"""Clone and enqueue with the real ClearML SDK, from another process than
the one that ran the source task: `Task.clone`, changed parameters on the
clone, `Task.enqueue` by queue name. Prints `RESULT {...}` with what it saw;
the Rust test checks it.

Arguments: <project> <source task name> <queue name>
"""
import json
import sys

from clearml import Task
from clearml.backend_api.session.client import APIClient

project, source_name, queue = sys.argv[1:4]
out = {}

source = Task.get_task(project_name=project, task_name=source_name)
APIClient().queues.create(name=queue)
cloned = Task.clone(source_task=source, name="cloned")
cloned.set_parameters({"General/lr": 0.5})
Task.enqueue(cloned, queue_name=queue)

seen = Task.get_task(task_id=cloned.id)
out["clone"] = {
    "status": seen.get_status(),
    "parent": seen.parent,
    "source": source.id,
    "params": seen.get_parameters(),
    "source_params": Task.get_task(task_id=source.id).get_parameters(),
    "last_scalars": seen.get_last_scalar_metrics(),
    "queued_in": seen.data.execution.queue,
}
out["queue_id"] = APIClient().queues.get_all(name="^" + queue + "$")[0].id
out["search"] = sorted(t.name for t in Task.get_tasks(project_name=project, task_name="clon"))
print("RESULT " + json.dumps(out, sort_keys=True, default=str))
