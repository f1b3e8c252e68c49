"""The json serializer passes the serializer contract."""

from celeriac.testing.contracts import SerializerContract


class TestJSONSerializer(SerializerContract):
    serializer_name = "json"
