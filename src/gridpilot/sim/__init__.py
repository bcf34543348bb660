"""Site simulator: a commercial building's physics behind simulated Modbus TCP devices.

* ``physics`` — pure models (load profile, PV, battery, 1R1C zones, VFD fan, 4-20 mA, meter);
* ``building`` — the site's devices composed and advanced together in simulated time;
* ``devices`` — register maps as data (SDM630-style meter, SunSpec-style inverter, ...);
* ``image`` — engineering values <-> register words, client-write checks (pure);
* ``server`` — one pymodbus TCP server per device serving an image;
* ``site`` — ``SimulatedSite`` (the async shell: ticker + servers) and ``run_sim``.

Nothing is imported here so that the pure modules load without pymodbus.
"""
