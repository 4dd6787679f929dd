"""The ``rag-sidecar`` command: the gateway's commands composed with the chaos tools' (see :mod:`rag_sidecar.cli`)."""
