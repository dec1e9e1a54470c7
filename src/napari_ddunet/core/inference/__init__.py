"""The out-of-core engine: grid plan, schedule, device workers, sink, distributed ranks."""
