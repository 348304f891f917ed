"""Generated protobuf and gRPC code for package specdec.v1 (see specdec/protogen.py). Do not edit."""
