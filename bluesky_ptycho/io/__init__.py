"""Readers and writers: HDF5 result files, beamline HDF5/NeXus layouts, databroker replay."""
