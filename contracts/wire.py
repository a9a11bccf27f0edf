"""The wire format of DESIGN.md, as constants: what every sender, switch
rule and parser agrees on.  Change one only where DESIGN.md changes.

A packet between hosts is Ethernet (0x8847), then three MPLS label stack
entries: transport (the destination host's node label), SPI, SI (S bit set),
each with TTL `MPLS_TTL`, then the original IP packet (RFC 8595).
"""
ETH_IPV4 = 0x0800
ETH_ARP = 0x0806
ETH_IPV6 = 0x86DD
ETH_MPLS = 0x8847        # MPLS unicast: the SFC label stack
ETH_MPLS_MC = 0x8848     # MPLS multicast: never valid in the fabric, dropped

SI_FIRST = 255           # service index at a chain's first NF; one less per NF after
MPLS_TTL = 64            # TTL of every label the fabric pushes

# Node labels and SPIs share MPLS's label space; 0..15 are reserved (RFC 3032).
FIRST_NODE_LABEL = 16
FIRST_SPI = 16
MAX_LABEL = (1 << 20) - 1

# A symmetric chain's replies travel their own service path, whose SPI is the
# chain's with this bit set; chains' own SPIs stay below it.
REVERSE_SPI_BIT = 1 << 19
MAX_CHAIN_SPI = REVERSE_SPI_BIT - 1


def reverse_spi(spi):
    """The SPI of the reply path of the chain whose SPI is `spi`."""
    return spi | REVERSE_SPI_BIT


# Why the fast path dropped a packet: every drop is counted under exactly one
# of these, in the order of host_agent/parser.pxd's R_* codes (the stats'
# and Prometheus' `reason`).
DROP_REASONS = (
    "truncated",        # frame shorter than its headers say
    "not_ip",           # neither IPv4 nor IPv6 (after any label stack)
    "bad_label_stack",  # not exactly transport/SPI/SI with S only on SI
    "ttl_zero",         # a label with TTL 0
    "wrong_node",       # transport label is not this host's node label
    "unknown_hop",      # no hop for (SPI, SI) in the plan
    "no_chain",         # untagged packet no classifier matched
    "nf_drop",          # an NF's verdict
    "ring_full",        # an NF process's ring was full
    "tx_full",          # a port did not take the packet
    "loop",             # visited more than 64 NFs on this host
    "bad_port",         # verdict OUT to a port that does not exist
    "no_plan",          # no plan applied yet
    "no_pin",           # reverse hop to remote instances, the flow has no pin
    "pin_lost",         # the flow's pinned host is no longer in the hop's list
    "no_server",        # pool end: no server has the packet's IPv4 destination
    "bad_ipv6",         # IPv6 extension headers cut short, or more than 8 of them
    "handoff_full",     # another worker's handoff ring was full (host_agent.handoff)
)


# Liveness probes (controller.probing): a frame of its own EtherType, from
# IEEE 802's local-experimental range, that never leaves the fabric (edge
# and server ports drop it).  The controller sends a request out of a
# host's switch port; the host's fast path answers it in its loop by
# swapping the MAC addresses and setting the kind to PROBE_ANSWER, and
# sends it back out of the port it came in by; the switch gives the answer
# to the controller.  Layout after the Ethernet header (big-endian):
#   14  kind (u8): PROBE_REQUEST or PROBE_ANSWER
#   15  reserved (u8), 0
#   16  sequence (u32), echoed unchanged
#   20  sender's opaque data (8 bytes), echoed unchanged
# padded to PROBE_LEN (Ethernet's 60-byte minimum without FCS).
ETH_PROBE = 0x88B5       # IEEE 802 Local Experimental EtherType 1
PROBE_REQUEST = 1
PROBE_ANSWER = 2
PROBE_KIND_OFFSET = 14
PROBE_LEN = 60
