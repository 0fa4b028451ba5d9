"""Physical constants, with the values LALSuite uses (lal/std/LALConstants.h)."""

SPEED_OF_LIGHT = 299792458.0
"""c in m/s."""

SOLAR_MASS_TIME = 4.925490947641267e-6
"""G M_sun / c^3 in seconds."""

SOLAR_MASS_LENGTH = 1476.6250380501247
"""G M_sun / c^2 in metres."""

PARSEC = 3.085677581491367e16
"""One parsec in metres."""

MEGAPARSEC = 1e6 * PARSEC
"""One megaparsec in metres."""

EULER_GAMMA = 0.5772156649015329
"""The Euler-Mascheroni constant."""

GMST_GW150914 = 2.4565323973278836
"""Greenwich mean sidereal time (rad, in [0, 2π)) at GPS 1126259462.391, the arrival of GW150914."""
