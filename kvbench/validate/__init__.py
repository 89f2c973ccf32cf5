"""`kvbench validate`: replay one trace on a real cluster (repeated) and on the simulator configured like it,
and record how well they agree (fidelity.json).

- ``targets``: the simulator's settings from what the servers and cluster files report;
- ``run``: plan, run and keep partial results on Ctrl-C;
- ``stats`` / ``compare``: spreads, Kendall tau-b, order agreement, the verdict;
- ``record``: the typed fidelity.json (read back by ``kvbench report``);
- ``commands``: the command line.
"""

from kvbench.validate.commands import register

__all__ = ["register"]
