"""Generated code for the ``policyopt.v1`` contract (regenerate with ``python tools/gen_proto.py``)."""
