"""Independent check of doudi's schemas with Python's `jsonschema` (Draft 2020-12).

Shows the schemas are standard JSON Schema, not one library's dialect. The custom formats are
implemented here again, independently of the Rust code. Prints one JSON line per example and
fixture line with the verdict, for tests/schemas.rs to compare with the Rust validator.
Usage: python3 validate_schemas.py SCHEMAS_DIR
"""
import csv, datetime, glob, json, os, re, sys

from jsonschema import Draft202012Validator, FormatChecker

schemas_dir = sys.argv[1]
divisions = set()
with open(os.path.join(schemas_dir, "divisions.csv"), encoding="utf-8") as f:
    for row in csv.reader(line for line in f if not line.startswith("#")):
        if row and row[0].isdigit():
            divisions.add(row[0])

WEIGHTS = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2]
CHECK = "10X98765432"
checker = FormatChecker()  # includes `date` (RFC 3339 full-date) and `uuid`


@checker.checks("cn-id-number")
def cn_id_number(value):
    if not isinstance(value, str):
        return True
    if not re.fullmatch(r"[0-9]{17}[0-9X]", value):
        return False
    if CHECK[sum(int(c) * w for c, w in zip(value[:17], WEIGHTS)) % 11] != value[17]:
        return False
    try:
        birth = datetime.date(int(value[6:10]), int(value[10:12]), int(value[12:14]))
    except ValueError:
        return False
    return datetime.date(1900, 1, 1) <= birth <= datetime.date.today() and value[:2] + "0000" in divisions


@checker.checks("cn-division")
def cn_division(value):
    return not isinstance(value, str) or value in divisions


@checker.checks("decimal-yuan")
def decimal_yuan(value):
    return not isinstance(value, str) or re.fullmatch(r"(0|[1-9][0-9]{0,11})(\.[0-9]{1,2})?", value) is not None


for path in sorted(glob.glob(os.path.join(schemas_dir, "*.json"))):
    name = os.path.basename(path)
    if name == "schemas.lock.json":
        continue
    schema = json.load(open(path, encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    validator = Draft202012Validator(schema, format_checker=checker)
    for i, example in enumerate(schema.get("examples", [])):
        print(json.dumps({"schema": name, "kind": "example", "index": i, "valid": validator.is_valid(example)}))
    fixtures = os.path.join(schemas_dir, "fixtures", name.replace(".json", ".jsonl"))
    if os.path.exists(fixtures):
        with open(fixtures, encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if line.strip():
                    fixture = json.loads(line)
                    print(json.dumps({"schema": name, "kind": "fixture", "index": line_no, "valid": validator.is_valid(fixture["data"])}))
