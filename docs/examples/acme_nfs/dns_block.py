"""dns-block: drops UDP to port 53 except to the resolvers in its config."""
import ipaddress

from nflib.api import PythonNF

UDP = 17


class DnsBlock(PythonNF):
    def __init__(self, config=None):
        super().__init__(config)
        self.allowed = {int(ipaddress.IPv4Address(a))
                        for a in self.config.get("resolvers", [])}
        self.blocked = 0

    def handle(self, batch):
        for i in range(len(batch)):
            proto, src, dst, sport, dport = batch.key(i)
            if proto == UDP and dport == 53 and dst not in self.allowed:
                batch.drop(i)
                self.blocked += 1
            # every other packet keeps its default verdict: next NF

    def counters(self):
        return {"blocked": self.blocked}
