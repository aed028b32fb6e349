"""gRPC code generated from proto/worldmodel/v1/worldmodel.proto (``python -m ivideogpt_client.proto_gen``).

The one generated package of the project: the SDK's gRPC client and the gateway's servicer both use it.
"""
