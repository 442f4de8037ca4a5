"""The image<->caption MMDiT family (continuous and discrete variants): docs/image_mmdit.md."""
