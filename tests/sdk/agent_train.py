"""A training script for the agent test: connects parameters, reports the
learning rate it ran with as a scalar for `steps` steps (sleeping `sleep`
seconds after each), and finishes."""
import time

from clearml import Task

task = Task.init(project_name="agent", task_name="agent-src",
                 auto_connect_frameworks=False, auto_resource_monitoring=False)
params = task.connect({"lr": 0.1, "steps": 2, "sleep": 0.0}, name="General")
for i in range(int(params["steps"])):
    task.get_logger().report_scalar("lr", "used", value=float(params["lr"]), iteration=i)
    if float(params["sleep"]) > 0:
        print("STEP %d" % i, flush=True)
        time.sleep(float(params["sleep"]))
print("TRAINED lr=%s" % params["lr"])
