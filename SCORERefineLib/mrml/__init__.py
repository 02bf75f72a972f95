"""The bridge between Slicer's MRML scene and the engine's numpy :class:`~SCORERefineLib.imageio.Volume`.

The only engine package that imports ``slicer`` (it works in Slicer and, for tests, with the
Qt-free ``slicer-core`` wheel). Everything here takes the scene or nodes explicitly. Split by
responsibility:

- :mod:`.conversion`: volumes, segments and regions <-> :class:`Volume` (RAS/LPS geometry);
- :mod:`.display`: framing and highlighting the current region, clicks in slice views;
- :mod:`.refine`: refine a segment in place with a hidden backup, undo, change per region;
- :mod:`.storage`: the rating session kept in the scene, scene files;
- :mod:`.workflow`: the panel's steps (split, restore, save and load a case);
- :mod:`.scribbles`: the two scribble segments (Segment Editor paint), read back as ``scribbles.nii.gz``.
"""

from .conversion import (_binary_name, ensure_segmentation_logic, new_scene, geometry_to_ijk_to_ras, geometry_from_ijk_to_ras, _vtk_matrix, _np_matrix, _image_data, _array_of, volume_to_node, volume_from_node, _oriented_image, _oriented_to_volume, new_segmentation_node, segment_ids, find_segment, add_mask_segment, merge_segments, SegmentMask, _aligned_offset, place_on_grid, segment_volume, segment_mask, region_colour, region_segment_name, regions_to_segmentation, region_segment_ids, regions_from_segmentation, region_at_ras, _FLIP, SESSION_ATTRIBUTE, REGION_TAG, ROLE_ATTRIBUTE, BACKUP_REFERENCE_ROLE, VOLUME_REFERENCE_ROLE, _LOGICS)  # noqa: F401
from .display import (show_initial_outline, frame_region, index_to_ras, centre_slice_views, highlight_region, slice_xy_to_ras)  # noqa: F401
from .refine import (PreparedRefine, prepare_refine, change_per_region, finish_refine, RefineResult, _backup_node, has_backup, backup_segment, apply_refined_mask, undo_refinement, RefineFunction, model_refiner, refine_segment)  # noqa: F401
from .storage import (store_session_json, load_session_json, save_scene, _write_scene_files, load_scene, nodes_by_class, find_session_node)  # noqa: F401
from .workflow import (SplitResult, split_segment_into_regions, region_params_of, attach_session, restore_session, save_case_from_scene, LoadedCase, load_case_into_scene)  # noqa: F401
from .scribbles import (SCRIBBLE_ROLE, SCRIBBLE_SEGMENTS, PAINT_EFFECT, ScribbleSegments, find_scribble_node, ensure_scribble_segments, scribbles_from_segmentation, count_scribbles, scribbles_to_segmentation, open_segment_editor)  # noqa: F401
