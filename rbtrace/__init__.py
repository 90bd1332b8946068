"""rbtrace: a Linux event tracer built on BCC probes and one BPF ring buffer."""

__version__ = "0.1.0"
