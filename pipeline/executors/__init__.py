"""Executors: who does a stage's work. `local` is the stage module itself; `ray` (ray.py) runs the
same stages on a Ray cluster and writes the same stage directories (`run.executor`)."""
