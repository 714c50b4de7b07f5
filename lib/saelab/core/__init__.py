"""The core library: the frozen model, data, SAE architectures, objectives, training, metrics.

Nothing here imports `saelab.studies`; `saelab.storyworld` is imported only where the source name
"storyworld" is resolved. See ARCHITECTURE.md for what each module is for.
"""
