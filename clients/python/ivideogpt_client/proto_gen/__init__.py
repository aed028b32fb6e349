"""gRPC code generated from proto/worldmodel/v1/worldmodel.proto (``python -m ivideogpt_client.proto_gen``)."""
