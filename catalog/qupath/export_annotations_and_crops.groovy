/**
 * orgaseg: export QuPath annotations for training (QuPath 0.4 or newer).
 *
 * For EVERY image of the open project (run it once, from Automate > Script editor > Run;
 * no need for "Run for project"), this writes into <project folder>/export/:
 *   geojsons/<imageName>.geojson   all annotations of the image as one GeoJSON FeatureCollection
 *                                  (pixel coordinates of the full-resolution image)
 *   crops/<imageName>Annotation (<Class>)_<i>.tif
 *                                  one TIFF per annotation: the bounding box of its ROI at full
 *                                  resolution; unclassified annotations are named <imageName>Annotation_<i>.tif
 *   export_log.csv                 one line per image: name, annotations, crops written, skipped
 *
 * These are exactly the inputs of `orgaseg annotations-to-masks` (geojsons/ + the images)
 * and `orgaseg sort-crops` (crops/).
 *
 * Improvements over the original seminar script:
 *  - loops over the whole project itself, so one run exports everything;
 *  - names are made safe for every file system (characters such as / \ : * ? " < > | and
 *    control characters become "_"), while keeping the "Annotation (<Class>)" pattern that
 *    sort-crops reads the class from;
 *  - existing files are never overwritten unless OVERWRITE is set to true below;
 *  - images that fail to open are reported and skipped, the others are still exported.
 */

import qupath.lib.regions.RegionRequest
import static qupath.lib.gui.scripting.QPEx.*

// ---- settings ---------------------------------------------------------------------------
boolean OVERWRITE = false           // true: replace files from an earlier export
double DOWNSAMPLE = 1.0             // 1.0 = crops at full resolution
String EXPORT_FOLDER = "export"     // inside the project folder
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

def project = getProject()
if (project == null) {
    println "orgaseg export: open a QuPath project first"
    return
}
def root = new File(buildFilePath(PROJECT_BASE_DIR, EXPORT_FOLDER))
def geojsonDir = new File(root, "geojsons")
def cropDir = new File(root, "crops")
[root, geojsonDir, cropDir].each { it.mkdirs() }
def logLines = ["image,annotations,crops_written,skipped_existing,error"]

for (entry in project.getImageList()) {
    String imageName = entry.getImageName()
    String safeImage = safeName(imageName)
    int written = 0
    int skipped = 0
    try {
        def imageData = entry.readImageData()
        def server = imageData.getServer()
        def annotations = imageData.getHierarchy().getAnnotationObjects().findAll { it.hasROI() }

        def geojson = new File(geojsonDir, safeImage + ".geojson")
        if (geojson.exists() && !OVERWRITE) {
            println "orgaseg export: ${geojson} exists, not overwritten (set OVERWRITE = true)"
            skipped++
        } else {
            // Write to a temporary file first so an interrupted export leaves no half file.
            def tmp = new File(geojsonDir, "." + safeImage + ".geojson.part")
            exportObjectsToGeoJson(annotations, tmp.getAbsolutePath(), "FEATURE_COLLECTION")
            java.nio.file.Files.move(tmp.toPath(), geojson.toPath(),
                    java.nio.file.StandardCopyOption.REPLACE_EXISTING)
        }

        annotations.eachWithIndex { annotation, i ->
            def pathClass = annotation.getPathClass()
            String label = pathClass == null ? "Annotation" : "Annotation (" + safeName(pathClass.toString()) + ")"
            def crop = new File(cropDir, safeImage + label + "_" + (i + 1) + ".tif")
            if (crop.exists() && !OVERWRITE) {
                skipped++
                return
            }
            def request = RegionRequest.createInstance(server.getPath(), DOWNSAMPLE, annotation.getROI())
            writeImageRegion(server, request, crop.getAbsolutePath())
            written++
        }
        println "orgaseg export: ${imageName}: ${annotations.size()} annotations, ${written} crops written, ${skipped} existing files kept"
        logLines << [imageName, annotations.size(), written, skipped, ""].collect { '"' + it.toString().replace('"', '""') + '"' }.join(",")
        server.close()
    } catch (Exception e) {
        println "orgaseg export: ${imageName}: FAILED (${e.getMessage()}); the other images are still exported"
        logLines << ['"' + imageName.replace('"', '""') + '"', "", "", "", '"' + String.valueOf(e.getMessage()).replace('"', '""') + '"'].join(",")
    }
}
new File(root, "export_log.csv").text = logLines.join("\n") + "\n"
println "orgaseg export: done, see ${root}"
