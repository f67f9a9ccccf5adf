"""Storage: URLs (fsspec, s3fs), collection readers, Zarr/xarray writers."""
