"""The kinds of events rbtrace traces: one module each, named like its
command and its probe (probes/<kind>.bpf.c).

A kind's module declares it once, as `SPEC` (rbtrace/spec.py), and holds
its codec (rbtrace/codec.py): how the members after the record header
become the event's.  Everything else (the command, the -D flags, the JSON
schema, the man page's generated regions) is derived from the spec.  Every
module here is a kind (rbtrace.spec.KINDS lists them from this folder);
shared code lives outside it.
"""
