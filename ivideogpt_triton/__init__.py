"""iVideoGPT on Triton Inference Server: the stateful model ``ivideogpt_rollout`` and what goes with it.

``protocol`` (its wire contract, one source for the model and its client), ``model`` (its
Python-backend code: the rollout engine over the exported TorchScript files), ``config``
(every ``config.pbtxt`` of the model repository, written through Triton's own
``model_config_pb2``), ``server`` (a CPU tritonserver launcher for tests, benchmarks and
development). The gateway's client of this model is ``server/backends/triton_client.py``.
"""
