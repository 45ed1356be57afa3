"""The fault suite (``python benchmarks/faults.py``): worker and broker failures and malformed
input during a replay on a 3-node Kafka cluster, each run compared with a clean run.

- ``outcome``: comparison of decision sets, recovery times, the table (pure).
- ``plan``: each scenario's faults as seeded steps (pure).
- ``malformed``: the malformed messages of scenario 4 (pure, seeded).
- ``harness``: the cluster, worker, replay, reader and writer processes.
- ``suite``: one scenario run, and the suite around it.
- ``sinkcount``: scenario 5's expected-vs-delivered accounting of the alert sinks (pure).
- ``sinkrig``, ``sinkrun``, ``sinkchild``: scenario 5's servers on 127.0.0.1, sink processes
  and run.
"""
