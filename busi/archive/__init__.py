"""What goes back to a hospital archive: busi's answers as DICOM objects (SR, SEG)."""
