"""The contracts every agentstream process and every outside service shares.

- :mod:`schemas.subjects`: subject, stream and consumer names, token validation.
- :mod:`schemas.headers`: NATS header names.
- :mod:`schemas.runs`: the run request (what is published to ``agents.{tenant}.{agent}.run``).
- :mod:`schemas.events`: run events (what is stored on ``runs.{tenant}.{agent}.{run_id}``).
- :mod:`schemas.tools`: tool invocation request and result, and the built-in tools' arguments.
- :mod:`schemas.agents`: the YAML agent definition.
- :mod:`schemas.streams`: JetStream stream and consumer definitions.
- ``schemas/json/*.schema.json`` and ``schemas/asyncapi.yaml``: the same, for other languages.
"""
