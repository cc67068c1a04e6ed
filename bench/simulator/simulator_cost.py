import sys, time
sys.path.insert(0, "/work/main")
from bench.jobs import job_set
from bench.inprocess import _seed
from workers.backends.aer import BackendRegistry
from workers.circuits.transpile import TranspileCache
from workers.execution.batching import execute_batch
from workers.execution.preparation import prepare, PreparedJob
from workers.jobs import JobSpec
from workers.limits import Limits
from workers.execution.simulator import Simulator, SimulateRequest

requests = job_set(480)
registry, cache, limits = BackendRegistry(), TranspileCache(), Limits()
prepared = [prepare(JobSpec.from_record(r), registry, cache, limits) for r in requests]
seeds = [_seed(r) for r in requests]
data = [p.to_bytes() for p in prepared]
def batches():
    for k in range(0, 480, 32):
        yield k
execute_batch(list(zip(prepared[:32], seeds[:32])), registry)
t = time.perf_counter(); c = time.process_time()
for k in batches():
    execute_batch(list(zip(prepared[k:k+32], seeds[k:k+32])), registry)
print("execute_batch in-process", time.perf_counter()-t, time.process_time()-c)
sim = Simulator()
sim.warm_up()
req = lambda k: SimulateRequest(items=tuple(zip(data[k:k+32], seeds[k:k+32])), noise_scale={n: registry.noise_scale(n) for n in ("aer.ideal","aer.noisy")}, ideal_qubits=registry.ideal_qubits)
sim.handle(req(0))
t = time.perf_counter(); c = time.process_time()
for k in batches():
    sim.handle(req(k))
print("Simulator.handle in-process", time.perf_counter()-t, time.process_time()-c)
t = time.perf_counter(); c = time.process_time()
for k in batches():
    [PreparedJob.from_bytes(d) for d in data[k:k+32]]
print("from_bytes", time.perf_counter()-t, time.process_time()-c)
