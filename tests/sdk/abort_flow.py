"""Stopping a running script from another client: `abort_target.py` runs as
its own process (a development task, as a user's script is); once it reports,
this process asks for the stop the way the web UI's "abort" does
(`tasks.stop`, here through the SDK's `mark_stop_request`), and the script
must notice by itself (the SDK polls its task's status) and exit. Prints
`RESULT {...}` with how and when it ended and what the server recorded.

Arguments: <path of abort_target.py> <seconds the target may run>
    <seconds allowed for it to stop>
"""
import json
import subprocess
import sys
import time

from clearml import Task

target, limit, allowed = sys.argv[1], sys.argv[2], float(sys.argv[3])
proc = subprocess.Popen(
    [sys.executable, target, "abort", "abort-me", limit],
    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
)
lines = []
task_id = None
steps = 0
# Wait until the task exists and has reported a few steps.
for line in proc.stdout:
    lines.append(line)
    if line.startswith("TASK "):
        task_id = line.split()[1]
    if line.startswith("STEP "):
        steps += 1
        if steps >= 3:
            break
out = {"task_id": task_id}
if task_id is None:
    proc.kill()
    out["output"] = "".join(lines)[-3000:]
    print("RESULT " + json.dumps(out))
    sys.exit(0)

before = Task.get_task(task_id=task_id)
out["status_before"] = before.get_status()
out["scalars_before"] = before.get_last_scalar_metrics()

asked = time.time()
Task.get_task(task_id=task_id).mark_stop_request()
out["status_after_request"] = Task.get_task(task_id=task_id).get_status()
try:
    rest, _ = proc.communicate(timeout=allowed)
    out["exited"] = True
except subprocess.TimeoutExpired:
    proc.kill()
    rest, _ = proc.communicate()
    out["exited"] = False
out["seconds_to_exit"] = round(time.time() - asked, 1)
out["returncode"] = proc.returncode
output = "".join(lines) + rest
out["loop_finished"] = "LOOP FINISHED" in output
out["user_aborted_message"] = "USER ABORTED" in output

after = Task.get_task(task_id=task_id)
out["status"] = after.get_status()
out["status_message"] = after.data.status_message
out["status_reason"] = after.data.status_reason
out["output_tail"] = output[-2000:]
print("RESULT " + json.dumps(out, sort_keys=True, default=str))
