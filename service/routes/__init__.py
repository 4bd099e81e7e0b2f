"""The HTTP routes, on APIRouters that create_app includes: memory.py (write, read, slots) and
ops.py (probes, stats, snapshot, metrics). Each route calls the engine and shapes its answer;
what it needs comes from the dependencies in service/deps.py."""
