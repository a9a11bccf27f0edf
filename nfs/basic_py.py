"""Plain-Python versions of the built-in NFs: the example of an NF written
in Python, and what `onvm bench fastpath --python` measures."""
from nflib.api import PythonNF


class PyForward(PythonNF):
    """Passes every packet on (the verdict starts as NEXT)."""

    def handle(self, batch):
        pass


class PyMonitor(PythonNF):
    """Counts packets and bytes per flow id."""

    def __init__(self, config=None):
        super().__init__(config)
        self.packets = 0
        self.bytes = 0
        self.flows = {}

    def handle(self, batch):
        flows = self.flows
        for i in range(len(batch)):
            fid = batch.flow_id(i)
            flows[fid] = flows.get(fid, 0) + 1
        self.packets += len(batch)

    def counters(self):
        return {"packets": self.packets, "flows": len(self.flows)}
