"""Files → pixels: raster images, DICOM scans, masks, Keras weight files, and the digests of decoded pixels."""
