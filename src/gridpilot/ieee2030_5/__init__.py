"""IEEE 2030.5 (Smart Energy Profile 2.0 / CSIP) client side: identity, safe XML, typed
resources, the pure event scheduler and the async client service.

Errors raised here (one root per concern, mapped at the I/O edge):

    ValueError
    └── XmlRejected          a server reply or request body that is not acceptable XML
                             (xmlsafe); names the resource, the reason and what to do
    Exception
    └── Ieee2030_5Error      the client cannot go on (registration refused, wrong PIN,
                             TLS/transport failure after retries); client.py
"""
