/**
 * orgaseg: export QuPath objects for training (QuPath 0.4, 0.5 and 0.6).
 *
 * Checked against the QuPath 0.4-0.6 scripting API in QuPath's source (qupath-core
 * ProjectImageEntry.getURIs / getOriginalImageName, ImageData.isChanged, Project.getEntry,
 * QP.exportObjectsToGeoJson, QP.writeImageRegion, RegionRequest.createInstance). It has not been
 * run inside QuPath by orgaseg's tests (QuPath cannot run in CI); the Python side reads every
 * file shape it writes.
 *
 * For EVERY image of the open project (run it once, from Automate > Script editor > Run;
 * no need for "Run for project"), this writes into <project folder>/export/:
 *   geojsons/<image file name>.geojson
 *                  the image's annotations and detections (EXPORT_TYPES) as one GeoJSON
 *                  FeatureCollection, pixel coordinates of the full-resolution image; an
 *                  analyze result corrected in QuPath (its objects are detections) comes back
 *                  whole: `orgaseg annotations-to-masks --object-types detection,annotation`
 *   crops/<image file name>Annotation (<Class>)_<i>.tif
 *                  one TIFF per exported object: the bounding box of its ROI at full resolution;
 *                  unclassified objects are named <image>Annotation_<i>.tif (or Detection ...).
 *                  Optional: `orgaseg extract-objects --class-folders` cuts the same crops from
 *                  the images and the GeoJSON alone. Set EXPORT_CROPS = false to skip them.
 *   crops/classes.csv  each class as QuPath shows it ("Tumor: Positive") and as it is written
 *                  in crop names ("Tumor - Positive"); sort-crops uses it to keep the name
 *   export_log.csv one line per image: project entry, file name used, objects, crops, error
 *
 * File names come from the image FILE (not from the project's display name, which may be
 * masked or read "x.czi - Series 1"), so they pair with the image files that orgaseg reads;
 * an entry that is one series of a multi-image file keeps its series in the name; names that
 * would collide after making them safe get "_2", "_3", ... .
 *
 * The open image: its objects are exported as they are NOW (also when not yet saved), with a
 * warning when they differ from the saved project data. Every other image is read from the
 * project as saved. Existing files are never overwritten unless OVERWRITE is set to true.
 * An image that fails is reported and the others are still exported; every image server is
 * closed, also after an error.
 */

import qupath.lib.common.GeneralTools
import qupath.lib.regions.RegionRequest
import static qupath.lib.gui.scripting.QPEx.*

// ---- settings ---------------------------------------------------------------------------
boolean OVERWRITE = false           // true: replace files from an earlier export
double DOWNSAMPLE = 1.0             // 1.0 = crops at full resolution
String EXPORT_FOLDER = "export"     // inside the project folder
boolean EXPORT_CROPS = true         // false: GeoJSON only (use extract-objects --class-folders)
List<String> EXPORT_TYPES = ["annotation", "detection"]  // also possible: "cell", "tile"
// ----------------------------------------------------------------------------------------

String safeName(String text) {
    if (text == null)
        return ""
    // Replace characters that are forbidden on Windows, macOS or Linux, and control characters.
    String safe = text.replaceAll('[\\\\/:*?"<>|\\p{Cntrl}]', '_').trim()
    // A name made only of dots would mean "this folder" or "the parent folder".
    if (safe.matches('^\\.+$'))
        safe = safe.replace('.', '_')
    return safe
}

// The folder name orgaseg uses for a class: QuPath's derived-class delimiter ":" as " - "
// ("Tumor: Positive" -> "Tumor - Positive"), the same rule as orgaseg's class_folder_name.
String classText(pathClass) {
    return safeName(pathClass.toString().split(":").collect { it.trim() }.join(" - "))
}

// The image file's name for a project entry: the file of its first URI; a series of a
// multi-image file keeps its series ("x.czi - Series 1"); the project's name if there is no file.
String fileName(entry) {
    String original = entry.getOriginalImageName()
    try {
        def uris = entry.getURIs()
        if (uris != null && !uris.isEmpty()) {
            def path = GeneralTools.toPath(uris.iterator().next())
            if (path != null) {
                String file = path.getFileName().toString()
                if (original != null && original.startsWith(file) && original.length() > file.length())
                    return original  // one series of a multi-image file
                return file
            }
        }
    } catch (Exception e) {
        println "orgaseg export: ${original}: no file name from its URI (${e.getMessage()}); using the project name"
    }
    return original
}

boolean wanted(pathObject, List<String> types) {
    return (types.contains("annotation") && pathObject.isAnnotation()) ||
           (types.contains("cell") && pathObject.isCell()) ||
           (types.contains("detection") && pathObject.isDetection() && !pathObject.isCell() && !pathObject.isTile()) ||
           (types.contains("tile") && pathObject.isTile())
}

String csv(value) {
    return '"' + String.valueOf(value == null ? "" : value).replace('"', '""') + '"'
}

def project = getProject()
if (project == null) {
    println "orgaseg export: open a QuPath project first"
    return
}
def root = new File(buildFilePath(PROJECT_BASE_DIR, EXPORT_FOLDER))
def geojsonDir = new File(root, "geojsons")
def cropDir = new File(root, "crops")
[root, geojsonDir, cropDir].each { it.mkdirs() }
def logLines = ["entry,file_name,objects,crops_written,skipped_existing,error"]

def classNames = [:] as TreeMap  // class as QuPath shows it -> the text in crop file names
def openData = getCurrentImageData()
def openEntry = openData == null ? null : project.getEntry(openData)
def usedNames = [] as Set

for (entry in project.getImageList()) {
    String baseName = safeName(fileName(entry))
    String safeImage = baseName
    int n = 2
    while (usedNames.contains(safeImage.toLowerCase()))
        safeImage = baseName + "_" + (n++)
    usedNames << safeImage.toLowerCase()
    if (safeImage != baseName)
        println "orgaseg export: ${entry.getImageName()}: file name ${baseName} already used; exported as ${safeImage}"
    int written = 0
    int skipped = 0
    int nObjects = 0
    def server = null
    try {
        def imageData
        if (openEntry != null && entry == openEntry) {
            imageData = openData
            if (imageData.isChanged())
                println "orgaseg export: WARNING ${entry.getImageName()} is open with UNSAVED changes; " +
                        "its current objects are exported (save the image to keep them in the project)"
        } else {
            imageData = entry.readImageData()
            server = imageData.getServer()  // opened here, so closed here (in finally)
        }
        def objects = imageData.getHierarchy().getAllObjects(false).findAll { it.hasROI() && wanted(it, EXPORT_TYPES) }
        nObjects = objects.size()

        def geojson = new File(geojsonDir, safeImage + ".geojson")
        if (geojson.exists() && !OVERWRITE) {
            println "orgaseg export: ${geojson} exists, not overwritten (set OVERWRITE = true)"
            skipped++
        } else {
            // Write to a temporary file first so an interrupted export leaves no half file.
            def tmp = new File(geojsonDir, "." + safeImage + ".geojson.part")
            exportObjectsToGeoJson(objects, tmp.getAbsolutePath(), "FEATURE_COLLECTION")
            java.nio.file.Files.move(tmp.toPath(), geojson.toPath(),
                    java.nio.file.StandardCopyOption.REPLACE_EXISTING)
        }

        if (EXPORT_CROPS) {
            // The open image's server stays open for the viewer: only servers opened here are closed.
            def source = imageData.getServer()
            objects.eachWithIndex { pathObject, i ->
                String kind = pathObject.isAnnotation() ? "Annotation" : (pathObject.isCell() ? "Cell" : (pathObject.isTile() ? "Tile" : "Detection"))
                def pathClass = pathObject.getPathClass()
                String label = kind
                if (pathClass != null) {
                    classNames[pathClass.toString()] = classText(pathClass)
                    label = kind + " (" + classText(pathClass) + ")"
                }
                def crop = new File(cropDir, safeImage + label + "_" + (i + 1) + ".tif")
                if (crop.exists() && !OVERWRITE) {
                    skipped++
                    return
                }
                def request = RegionRequest.createInstance(source.getPath(), DOWNSAMPLE, pathObject.getROI())
                writeImageRegion(source, request, crop.getAbsolutePath())
                written++
            }
        }
        println "orgaseg export: ${entry.getImageName()} -> ${safeImage}: ${nObjects} objects, ${written} crops written, ${skipped} existing files kept"
        logLines << [csv(entry.getImageName()), csv(safeImage), nObjects, written, skipped, csv("")].join(",")
    } catch (Exception e) {
        println "orgaseg export: ${entry.getImageName()}: FAILED (${e.getMessage()}); the other images are still exported"
        logLines << [csv(entry.getImageName()), csv(safeImage), nObjects, written, skipped, csv(e.getMessage())].join(",")
    } finally {
        if (server != null) {
            try {
                server.close()
            } catch (Exception e) {
                println "orgaseg export: ${entry.getImageName()}: could not close its image server (${e.getMessage()})"
            }
        }
    }
}
new File(root, "export_log.csv").text = logLines.join("\n") + "\n"
// sort-crops reads this to give crops of "Tumor - Positive" their class "Tumor: Positive" back
if (EXPORT_CROPS)
    new File(cropDir, "classes.csv").text = (["class,folder"] + classNames.collect { k, v -> csv(k) + "," + csv(v) }).join("\n") + "\n"
println "orgaseg export: done, see ${root}"
