"""A script that trains "forever": Task.init, then a loop that reports a
scalar and prints every half second for at most `limit` seconds. It only
ends early if something stops it. Prints `TASK <id>` once the task runs,
and `LOOP FINISHED` if nobody stopped it.

Arguments: <project> <name> <limit seconds>
"""
import sys
import time

from clearml import Task

project, name, limit = sys.argv[1], sys.argv[2], float(sys.argv[3])
task = Task.init(project_name=project, task_name=name, reuse_last_task_id=False,
                 auto_connect_frameworks=False, auto_resource_monitoring=False)
print("TASK %s" % task.id, flush=True)
logger = task.get_logger()
start = time.time()
i = 0
while time.time() - start < limit:
    logger.report_scalar("progress", "step", value=float(i), iteration=i)
    print("STEP %d" % i, flush=True)
    i += 1
    time.sleep(0.5)
print("LOOP FINISHED", flush=True)
