"""Spatial core: angles, FOA conventions and rotation, dominant direction, HRIRs, binaural
decoders and equirect->perspective projection. One convention for everything: x front, y left,
z up; azimuth counter-clockwise (+90 = left); elevation +90 = up; angles in degrees at the API."""
