"""Selection: which verified rationales become training data.

Each module is one step of the dedup stage, usable on its own: `normalise` (text keys),
`minhash` (near-duplicates), `paths` (RFT reasoning paths), `contamination` (n-gram overlap
with evaluation sets), `balance` (per-problem choice and weighting). `pipeline.stages.dedup`
runs them in order, shard by shard, and reports what each removed.
"""
