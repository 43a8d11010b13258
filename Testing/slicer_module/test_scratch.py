import numpy as np, slicer, slicer.util
from conftest import shared_path
from slicer_fixtures import slicer_scene
def test_x(slicer_scene, tmp_path):
    from TeViASegmentLib import scene
    vol = slicer.modules.volumes.logic().AddArchetypeVolume(str(shared_path("volumes","spinalcord-t2-mri","t2.nii.gz")), "ct")
    arr, m = scene.volume_arrays(vol)
    ids0 = {slicer_scene.GetNthNode(i).GetID() for i in range(slicer_scene.GetNumberOfNodes())}
    lab = np.zeros(arr.shape, np.uint8); lab[7:12, 10:30, 5:20] = 1; lab[30:33, 1:2, 1:3] = 2
    seg3, ids3 = scene.import_labelmap(lab, {1: "liver", 2: "x"}, vol, None)
    ids1 = {slicer_scene.GetNthNode(i).GetID() for i in range(slicer_scene.GetNumberOfNodes())}
    print("ADDED", [(i, slicer_scene.GetNodeByID(i).GetName()) for i in ids1 - ids0])
    for v, sid in zip([1,2], ids3):
        got = slicer.util.arrayFromSegmentBinaryLabelmap(seg3, sid, vol)
        print("EQ", (got.astype(bool) == (lab==v)).all(), got.sum())
    print(m)
