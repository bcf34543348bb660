"""The Modbus gateway: poll scheduling, telemetry publishing, command execution with
read-back, device health.

Pure cores (no I/O, explicit ``now``):

* ``schedule`` -- fixed-rate poll deadlines without drift; overruns skip ticks.
* ``health`` -- online/offline state machine, last error with a troubleshooting hint,
  counters, reconnect backoff for dead devices.
* ``commands`` -- command payload validation, ``Applied | Rejected | Failed`` outcomes,
  read-back judgement, result messages.
* ``points`` -- configured points to register specs; register words to telemetry values.
* ``payloads`` -- telemetry and state JSON.

The I/O shell is ``service.GatewayService`` (imported from its module: it pulls in the
Modbus and MQTT clients).
"""
