"""Open napari with the napari-emssl widgets docked and the sample data loaded (`make run`)."""

import napari


def main() -> None:
    viewer = napari.Viewer(title="napari-emssl")
    viewer.open_sample("napari-emssl", "sstem_crop")
    viewer.window.add_plugin_dock_widget("napari-emssl", "Pretrain")
    viewer.window.add_plugin_dock_widget("napari-emssl", "Fine-tune")
    viewer.window.add_plugin_dock_widget("napari-emssl", "Apply")
    napari.run()


if __name__ == "__main__":
    main()
